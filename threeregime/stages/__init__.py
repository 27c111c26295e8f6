"""One function per workflow rule: read the rule's inputs, call the layers below, write its
outputs atomically. The CLI parses arguments and calls these."""
