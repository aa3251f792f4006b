"""The Triton python-backend runtime: what every ``model_repository/<model>/1/model.py`` adapter is built on."""
