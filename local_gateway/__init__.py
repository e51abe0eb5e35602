"""The local stack: the service's handlers on one machine, behind emulated AWS edges."""
