"""ikectl: encrypt DNS with IKEv2/IPsec through libreswan and the kernel's XFRM layer."""

__version__ = "0.1.0"
