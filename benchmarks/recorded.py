"""Settings under which results in docs/ were recorded, where a preset has changed since, so that
the benchmarks that produced them still reproduce them (imported by the scripts in this folder)."""

# text-tiny until 2026-12-01: the English corpus only, dropout 0.1, no time budget
TEXT_TINY_AS_RECORDED = ["data.train=english", "model.dropout=0.1", "model.attention_dropout=0.1",
                         "model.post_mlp_dropout=0.1", "model.text.embed_dropout=0.1", "train.time_budget_s=0"]
