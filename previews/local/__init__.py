"""``previews up``: the whole stack on one machine, and its demo. Nothing in the library imports this package."""
