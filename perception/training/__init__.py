"""Training: losses (:mod:`.losses`, functional) and the criterion that combines them (:mod:`.criterion`).

Needs torch. Importing this package imports nothing; import the modules you use.
"""
