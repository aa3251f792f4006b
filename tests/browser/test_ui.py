"""The /ui page in a real browser, each flow end to end against the live stack (tiny models): the controls are found
by their accessible names, as a screen reader finds them."""

from __future__ import annotations

import json
import re
import time
from urllib.parse import urlparse

from playwright.sync_api import Page, expect

from emoserve.audio import encode_wav
from emoserve.constants import ARKIT_BLENDSHAPE_NAMES
from emoserve.emotion_llama.prompts import EMOTION_LABELS
from tests.browser.conftest import HALLO2_STEPS, screenshot
from tests.conftest import EXAMPLES, speech_like

SPEECH = EXAMPLES / "speech.wav"
PORTRAIT = EXAMPLES / "portrait.png"


def face_pictures(page: Page, count: int, interval_s: float) -> list[bytes]:
    face = page.get_by_role("img", name="Face")
    pictures = []
    for _ in range(count):
        pictures.append(face.screenshot())
        time.sleep(interval_s)
    return pictures


def test_audio_file_drives_the_face_in_time_with_playback(page: Page, ui_api):
    expected_weights = ui_api.post("/api/infer", files={"audio_file": SPEECH.open("rb")}).json()["metadata"]["weights"]
    page.get_by_label("Audio file").set_input_files(SPEECH)
    page.get_by_label("Brow movement").check()
    page.get_by_role("button", name="Animate").click()
    expect(page.get_by_role("status").filter(has_text="frames at 30")).to_be_visible(timeout=60_000)

    pictures = face_pictures(page, 4, 0.4)
    assert len(set(pictures)) >= 3, "the face does not move while the audio plays"
    assert page.get_by_label("Audio playback").evaluate("audio => audio.currentTime") > 0.5
    expect(page.get_by_label("Loaded weights")).to_contain_text(f"LAM-A2E: {expected_weights}")
    screenshot(page, "audio-to-expression")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download JSON").click()
    body = json.loads(download.value.path().read_text())
    assert body["names"] == list(ARKIT_BLENDSHAPE_NAMES)
    assert body["metadata"]["frame_count"] == len(body["frames"]) == 210  # 6.97 s at 30 fps


def test_microphone_streams_chunks_while_recording(page: Page, ui_api):
    page.get_by_role("button", name="Record").click()
    streaming = page.get_by_role("status").filter(has_text="streaming: chunk")
    expect(streaming).to_be_visible(timeout=30_000)
    assert ui_api.get("/api/health").json()["sessions"] == 1
    expect(page.get_by_role("status").filter(has_text="streaming: chunk 3,")).to_be_visible(timeout=30_000)
    live = face_pictures(page, 3, 0.3)
    assert len(set(live)) >= 2, "the face does not follow the live stream"
    screenshot(page, "audio-to-expression-recording")

    page.get_by_role("button", name="Stop recording").click()
    recorded = page.get_by_role("status").filter(has_text="recorded:")
    expect(recorded).to_be_visible(timeout=30_000)
    frames = int(recorded.inner_text().split()[1])
    assert frames >= 90  # three 1 s chunks at least
    assert ui_api.get("/api/health").json()["sessions"] == 0, "the page did not close its session"
    assert page.get_by_role("alert").first.inner_text() == ""


def test_emotion_llama_answer_streams_token_by_token(page: Page, ui_api):
    page.get_by_role("tab", name="Emotion-LLaMA").click()
    page.get_by_role("button", name="[emotion]").click()
    page.get_by_label("Max new tokens").fill("24")
    # every text the Answer shows on the way, as the page writes it
    page.get_by_label("Answer").evaluate("""answer => {
        window.answerTexts = [];
        new MutationObserver(records => records.forEach(r => r.addedNodes.forEach(n => window.answerTexts.push(n.data))))
            .observe(answer, {childList: true});
    }""")
    page.get_by_role("button", name="Ask").click()
    expect(page.get_by_role("status").filter(has_text="answered in")).to_be_visible(timeout=120_000)

    texts = page.evaluate("window.answerTexts")
    final = page.get_by_label("Answer").inner_text()
    assert final.strip()
    growing = [text for text in texts if text and final.startswith(text)]
    assert len(set(growing)) >= 3, f"the answer did not arrive token by token: {texts}"
    assert page.get_by_label("Prompt").input_value().startswith("[emotion]")
    labels = page.get_by_label("Emotion label")
    expect(labels).to_contain_text("Emotion:")
    assert labels.get_by_role("meter").count() == len(EMOTION_LABELS)
    expect(page.get_by_label("Loaded weights")).to_contain_text("Emotion-LLaMA: ")
    screenshot(page, "emotion-llama")


def test_talking_head_progress_reaches_100_and_the_video_plays(page: Page, tmp_path):
    audio = tmp_path / "speech.wav"
    audio.write_bytes(encode_wav(speech_like(1.0, seed=2)))
    page.get_by_role("tab", name="Talking head").click()
    expect(page.get_by_label("Steps")).to_have_value(str(HALLO2_STEPS))
    page.get_by_label("Portrait image").set_input_files(PORTRAIT)
    page.get_by_label("Driving audio").set_input_files(audio)
    page.get_by_label("Guidance scale").fill("3")
    progress = page.get_by_label("Progress")
    progress.evaluate("""bar => {
        window.progressValues = [];
        new MutationObserver(() => window.progressValues.push(bar.value)).observe(bar, {attributes: true});
    }""")
    task_requests: list[str] = []
    page.on("request", lambda request: task_requests.append(urlparse(request.url).path)
            if "/api/v1/tasks/" in request.url else None)
    page.get_by_role("button", name="Generate").click()

    video = page.get_by_label("Result video")
    page.wait_for_function("() => document.querySelector('[aria-label=\"Result video\"]').duration > 0", timeout=180_000)
    # the page followed the task's event stream: no status polls
    assert [path for path in task_requests if path.endswith("/events")] and not [
        path for path in task_requests if re.fullmatch(r"/api/v1/tasks/[0-9a-f-]{36}", path)], task_requests
    assert video.evaluate("video => video.duration") > 0.5
    values = page.evaluate("window.progressValues")
    assert values and values[-1] == 100 and values == sorted(values), values
    expect(progress).to_have_attribute("value", "100")
    assert page.get_by_role("alert").filter(has_text="task").count() == 0
    tasks = page.get_by_role("table", name="Tasks")
    expect(tasks.get_by_role("row").filter(has_text="completed")).to_have_count(1)
    screenshot(page, "talking-head")

    with page.expect_download() as download:
        tasks.get_by_role("button", name="Download task").click()
    assert download.value.path().read_bytes()[4:8] == b"ftyp"

    # a long one, cancelled from the task list while it runs or waits
    page.get_by_label("Steps").fill("60")
    page.get_by_role("button", name="Generate").click()
    tasks.get_by_role("button", name="Cancel task").click()
    expect(page.locator("#hallo2-error")).to_contain_text("The task cancelled")
    expect(tasks.get_by_role("row").filter(has_text="cancelled")).to_have_count(1)


def test_invalid_uploads_show_the_apis_own_errors(page: Page, ui_api):
    """One refused upload per API, each with its error body's format: the page shows what the API said."""
    lam = ui_api.post("/api/infer", files={"audio_file": ("portrait.png", PORTRAIT.read_bytes())})
    assert lam.status_code == 400
    page.get_by_label("Audio file").set_input_files(PORTRAIT)
    page.get_by_role("button", name="Animate").click()
    expect(page.locator("#a2e-error")).to_have_text(lam.json()["detail"])

    llama = ui_api.post("/api/v1/emotion-llama/analyze", files={"video_file": ("speech.wav", SPEECH.read_bytes())},
                        data={"question": "[emotion] What is the emotion?"})
    assert llama.status_code == 400
    page.get_by_role("tab", name="Emotion-LLaMA").click()
    page.get_by_label("Video file").set_input_files(SPEECH)
    page.get_by_label("Prompt").fill("[emotion] What is the emotion?")
    page.get_by_role("button", name="Ask").click()
    error = llama.json()
    expect(page.locator("#llama-error")).to_have_text(f"{error['error']} ({error['details']})")

    hallo2 = ui_api.post("/api/v1/inference/hallo2", files={"image_file": ("speech.wav", SPEECH.read_bytes()),
                                                             "audio_file": ("speech.wav", SPEECH.read_bytes())})
    assert hallo2.status_code == 400 and hallo2.json()["error_code"] == "INVALID_IMAGE"
    page.get_by_role("tab", name="Talking head").click()
    page.get_by_label("Portrait image").set_input_files(SPEECH)
    page.get_by_label("Driving audio").set_input_files(SPEECH)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#hallo2-error")).to_have_text(hallo2.json()["detail"])
    screenshot(page, "invalid-upload")
