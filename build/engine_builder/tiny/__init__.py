"""The demo and test models, apart from the converter: the tiny tokenizer (`tokenizer`), tiny random
Gemma 4 checkpoints made by transformers (`random_checkpoint`) and the taught tiny model that `make serve`
demonstrates (`taught`, trained on `taught_corpus`)."""
