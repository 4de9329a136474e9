"""The executor: places routed orders at one broker and reports what happens."""
