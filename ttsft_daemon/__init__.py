"""ttsft-daemon: turn long, messy recordings of a person into a Piper TTS voice, unattended."""

__version__ = "0.1.0"
