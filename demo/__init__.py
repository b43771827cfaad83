"""The end-to-end demo and the embedded local broker it (and the tests) run on."""
