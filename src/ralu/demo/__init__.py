"""The demo wing: the toy shapes model, its data, pictures and training. The core never imports it."""
