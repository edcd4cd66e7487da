//go:build !linux

package keystore_test

import "time"

// cpuTimes is not measured off Linux: see bench_cpu_test.go.
func cpuTimes() (client, server time.Duration) { return 0, 0 }
