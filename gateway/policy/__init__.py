"""Policy files: the YAML that security teams write, check, test and sign."""
