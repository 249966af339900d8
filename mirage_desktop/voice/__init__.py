"""Real-time voice changer: audio devices, 16 kHz chunking, converters, SOLA, virtual microphone.

Modules (heavy imports stay inside functions so ``mirage --help`` is fast):

- :mod:`.audio_io`    sounddevice devices, name/index resolution, PulseAudio targets, stream opening
- :mod:`.mic`         ``Mirage Microphone`` on Linux (pactl null sink + remap source)
- :mod:`.resample`    streaming polyphase resampler (device rate <-> 16 kHz)
- :mod:`.sola`        SOLA crossfade between chunks
- :mod:`.f0`          F0 estimation (harvest, dio) and measurement helpers
- :mod:`.converters`  converter contract, pass-through, built-in WORLD voice changer + presets
- :mod:`.rvc`         user-supplied RVC ONNX models (content encoder, synthesizer, RMVPE)
- :mod:`.engine`      chunking, silence gate, SOLA, real-time control (device independent)
- :mod:`.pipeline`    ``VoicePipeline``: devices + engine + worker thread
- :mod:`.bench`       ``python -m mirage_desktop.voice.bench``
"""

SAMPLE_RATE = 16000  # everything inside the voice engine runs at 16 kHz mono
