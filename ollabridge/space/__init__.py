"""The Hugging Face Space tooling: lay out a Space's repository, duplicate it, deploy to it
(`python -m ollabridge space ...`)."""
