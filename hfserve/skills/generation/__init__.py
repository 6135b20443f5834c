"""What text generation runs on: the continuous-batching engine and its sampling stage.

It sits at the skills' level (a skill never imports ``runtime/``), below the skills that use it.
"""
