package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestPastaName(t *testing.T) {
	for pkg, want := range map[string]string{
		"0.0~git20230309.7c7625d-1":         "pasta 2023",
		"0.0~git20250503.587980c-2+deb13u1": "pasta 2025",
		"":                                  "pasta",
		"1.0-1":                             "pasta",
		"0.0~gitXXXX0101.0000000-1":         "pasta",
	} {
		if got := pastaName(pkg); got != want {
			t.Errorf("pastaName(%q) = %q, want %q", pkg, got, want)
		}
	}
}

func TestPasta2025(t *testing.T) {
	root := t.TempDir()
	d := &driver{opt: options{pasta2025Root: root, pasta: "pasta", usernetPasta: "/b/pasta"}}
	if why := d.pasta2025Missing(); !strings.Contains(why, "integration/trixie.sh") {
		t.Errorf("empty root: pasta2025Missing = %q, want the reason", why)
	}
	for _, f := range []string{pasta2025Loader, pasta2025Bin()} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(root, f), nil, 0o755)
	}
	os.WriteFile(filepath.Join(root, "usernet-versions.txt"), []byte("libc6 2.41-12\npasst 0.0~git20250503.587980c-2\npasst-repair 9\n"), 0o644)
	if why := d.pasta2025Missing(); why != "" {
		t.Errorf("complete root: pasta2025Missing = %q", why)
	}
	if got := pkgVersion(root, "passt"); got != "0.0~git20250503.587980c-2" {
		t.Errorf("pkgVersion(passt) = %q", got)
	}
	if v := d.version(pasta2025); !strings.HasPrefix(v, "pasta 2025 (0.0~git20250503.587980c-2") || !strings.Contains(v, "libc6 2.41-12") {
		t.Errorf("version = %q", v)
	}
	argv := d.pastaArgv0(pasta2025)
	want := []string{filepath.Join(root, pasta2025Loader), "--library-path",
		filepath.Join(root, "usr/lib/x86_64-linux-gnu") + ":" + filepath.Join(root, "lib/x86_64-linux-gnu"),
		"--argv0", "pasta", filepath.Join(root, pasta2025Bin())}
	if !slices.Equal(argv, want) {
		t.Errorf("pastaArgv0 = %q, want %q", argv, want)
	}
	if got := d.pastaArgv0(usernetPasta); !slices.Equal(got, []string{"/b/pasta"}) {
		t.Errorf("usernet-pasta: %q", got)
	}
	if got := d.pastaArgv0("pasta"); !slices.Equal(got, []string{"pasta"}) {
		t.Errorf("pasta: %q", got)
	}
}

// The pasta backends get the same arguments after their argv0, forwards included.
func TestPastaSameArgs(t *testing.T) {
	d := &driver{opt: options{pasta2025Root: "/r", pasta: "pasta", usernetPasta: "/b/pasta"}}
	var tails [][]string
	for _, b := range []string{"pasta", pasta2025, usernetPasta} {
		in := d.newInstance(b, 65520, false)
		in.nsPID = 42
		argv, err := in.command()
		if err != nil {
			t.Fatal(err)
		}
		n := len(d.pastaArgv0(b))
		if !slices.Equal(argv[:n], d.pastaArgv0(b)) {
			t.Fatalf("%s: %q", b, argv)
		}
		tails = append(tails, argv[n:])
		if in.hasReadyFD() {
			t.Errorf("%s has a ready fd", b)
		}
	}
	for _, tl := range tails[1:] {
		if !slices.Equal(tl, tails[0]) {
			t.Errorf("arguments differ: %q and %q", tl, tails[0])
		}
	}
}
