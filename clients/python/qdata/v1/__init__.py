"""Generated code for the qdata.v1 contract; regenerate with `make proto`, never edit by hand."""
