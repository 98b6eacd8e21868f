"""One run config per released official FCOS model (tianzhi0549/FCOS)."""
