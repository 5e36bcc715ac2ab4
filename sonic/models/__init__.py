"""Network definitions, each in a module named after what it does. Dimensions always come
from the loaded configs and checkpoint shapes, so tiny test models use the same code."""
