/* Empty: CQembedSIMD is header-only. */
