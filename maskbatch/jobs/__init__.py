"""The jobs a user runs (predict, extract, evaluate): orchestration, the output folder policy, result
types and the printed summaries. The CLI calls these; they call the runtime and the tasks."""
