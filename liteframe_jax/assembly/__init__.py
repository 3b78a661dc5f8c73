"""Models as a run produces them: specs (`spec.json`) that build the student or the whole Video LLM, run
folders that hold everything needed to use them, and answering questions with a built Video LLM."""
