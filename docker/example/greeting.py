"""Edit TEXT and save: every worker prints the new greeting within about a second."""

TEXT = "hello from version 1"
