"""Host seams: the filesystem root every file goes through, the one subprocess runner, and systemd notify."""
