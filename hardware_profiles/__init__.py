"""Hardware profiles shipped with paraplan: gpus/*.json and clusters/*.json (data, with sources)."""
