"""The agegender application: the ``agegender`` command, training runs, recipes and run folders.

It composes the three libraries (``utkface_data``, ``agegender_models``, ``agegender_eval``);
they never import it. ``agegender --help`` lists the commands.
"""

__version__ = "0.1.0"
