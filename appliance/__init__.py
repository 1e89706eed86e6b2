"""The device-side agent: one tunnel per VRF from a device behind NAT to the overlay server."""
