"""One module per kind of data source, and the registry that builds them."""
