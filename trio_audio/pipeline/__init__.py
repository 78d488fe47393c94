"""The analysis pipeline: bounded channels joining pools of stage workers."""
