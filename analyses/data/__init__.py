"""Where questions come from: ``Example`` (one question with its image and golds), the benchmark
loaders (POPE, VQAv2, TextVQA, LLaVA-Bench, counting/spatial, Shapes) and the Shapes generator."""
