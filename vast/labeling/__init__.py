"""The labeling pipeline: raw clips -> subtitles (Whisper), vision and audio captions, omni captions -> shards."""
