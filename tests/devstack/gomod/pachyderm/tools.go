//go:build tools

package tools

import (
	_ "github.com/pachyderm/pachyderm/v2/src/server/cmd/pachd"
	_ "github.com/pachyderm/pachyderm/v2/src/server/cmd/pachctl"
)
