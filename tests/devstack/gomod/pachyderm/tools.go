//go:build tools

package tools

import (
	_ "github.com/pachyderm/pachyderm/v2/etc/worker"
	_ "github.com/pachyderm/pachyderm/v2/src/server/cmd/pachctl"
	_ "github.com/pachyderm/pachyderm/v2/src/server/cmd/pachd"
	_ "github.com/pachyderm/pachyderm/v2/src/server/cmd/pachtf"
	_ "github.com/pachyderm/pachyderm/v2/src/server/cmd/worker"
)
