"""Toy models of superposition (Elhage et al., 2022): models, analyses, figures."""
