"""The HTTP routes: KB-VQA, knowledge-grounded generation, entity search."""
