"""The tested helper package of the course "LoRA from First Principles".

Each module holds the code of one part of the course, in the form the chapters develop
it: `linalg` (Chapters 1-3), `lora` (Chapter 4) and `exercises` (the learners' checks).
"""


def add_to_class(cls):
    """Attach the decorated function to `cls` as a method.

    This lets a chapter build a class cell by cell.
    """

    def attach(function):
        name = (
            function.__func__.__name__
            if isinstance(function, classmethod)
            else function.__name__
        )
        setattr(cls, name, function)
        return function

    return attach
