package migratetest

import (
	"os/exec"
	"strings"
	"testing"
)

// tools are the modules this suite brings, which must stay out of the
// library's module graph.
var tools = []string{"github.com/pressly/goose/", "github.com/golang-migrate/migrate/"}

// The library's module graph (go list -m all in the repository's root)
// holds neither goose nor golang-migrate, while this module's does: the
// check sees them where they are.
func TestToolsStayOutOfTheLibrarysGraph(t *testing.T) {
	t.Parallel()
	graph := func(dir string) string {
		cmd := exec.Command("go", "list", "-m", "all")
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list -m all in %s: %v\n%s", dir, err, out)
		}
		if !strings.HasPrefix(string(out), "github.com/idsafe/keystore") {
			t.Fatalf("go list -m all in %s lists %q first", dir, strings.SplitN(string(out), "\n", 2)[0])
		}
		return string(out)
	}
	library, suite := graph("../.."), graph(".")
	for _, tool := range tools {
		if strings.Contains(library, "\n"+tool) {
			t.Errorf("%s is in the library's module graph:\n%s", tool, library)
		}
		if !strings.Contains(suite, "\n"+tool) {
			t.Errorf("%s is not in this module's graph, so the check cannot see it:\n%s", tool, suite)
		}
	}
}
