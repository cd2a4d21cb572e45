"""Everything between a prompt's text and the next token: tokenizer, prompts, engine, backends."""
