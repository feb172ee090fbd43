"""Modules loaded by path (``relmod.at``, ``use``, ``imp``) live in ``sys.modules`` here.

Their names encode their paths (``relmod.files./home/me/proj/helpers``), so code that looks a module
up by name (dataclasses, typing, pickle) finds them, and pickle can import them again elsewhere.
"""
