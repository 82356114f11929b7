"""The library behind the commands at the top level of the repository: one concern a module.

It imports nothing from the top level. The commands and the course's five modules
(``faces_dataset``, ``models``, ``xception``, ``trainer``, ``utils``) import from it, and pass it
the datasets and models they build. ``docs/design.md#code-map`` says which module holds what.
"""
