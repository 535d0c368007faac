"""The ``vnetdp`` network plugin: configuration, commands, pod records."""
