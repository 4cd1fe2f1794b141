"""Speech-to-text, language models and text-to-speech: the cloud (and local) services a turn is built from,
their error mapping, and the factory that chooses them from configuration."""
