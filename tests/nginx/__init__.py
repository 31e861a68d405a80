"""The nginx tier, a package so that its conftest.py and helper modules have names of their own."""
