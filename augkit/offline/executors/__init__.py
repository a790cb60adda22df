"""Engines that run an augment plan: in-process and a local process pool (``local``, ``pool``), Ray Data (``ray``); typed worker results (``result``); what pool workers import (``preload``)."""
