// Command cnidriver calls CNI plugins the way container runtimes do: through
// libcni (github.com/containernetworking/cni/libcni), the library containerd,
// CRI-O and podman's CNI backend use. The end-to-end tests build it and drive
// vnetdp with it.
//
//	cnidriver add|check|del --conflist FILE --netns PATH --container-id ID
//	          --bin-dir DIR[,DIR...] [--ifname IF] [--cache-dir DIR]
//	          [--cap-args JSON] [--args K=V;K=V] [--timeout DURATION]
//
// add prints the chain's result as JSON on stdout; check and del print
// nothing. Errors go to stderr and the exit status is 1 (2 for bad usage).
//
// Built offline against Debian's golang-github-appc-cni-dev (libcni 1.1.2,
// sources in /usr/share/gocode/src), in GOPATH mode, no module proxy:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
//	    go build -o cnidriver ./tests/e2e/libcni
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

const usage = `usage: cnidriver add|check|del --conflist FILE --netns PATH --container-id ID
                 --bin-dir DIR[,DIR...] [--ifname IF] [--cache-dir DIR]
                 [--cap-args JSON] [--args K=V;K=V] [--timeout DURATION]

Runs a network configuration list (or a single network configuration) through
libcni as a container runtime does: AddNetworkList, CheckNetworkList or
DelNetworkList. add prints the result as JSON on stdout.

`

type options struct {
	conflist, netns, containerID, ifname, binDirs, cacheDir, capArgs, args string
	timeout                                                                time.Duration
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(argv []string, stdout, stderr io.Writer) int {
	if len(argv) == 0 || argv[0] == "-h" || argv[0] == "--help" || argv[0] == "help" {
		out := stderr
		if len(argv) > 0 {
			out = stdout
		}
		fmt.Fprint(out, usage)
		newFlags(&options{}, out).PrintDefaults()
		if len(argv) == 0 {
			return 2
		}
		return 0
	}
	command := argv[0]
	if command != "add" && command != "check" && command != "del" {
		fmt.Fprintf(stderr, "cnidriver: unknown command %q (add, check or del)\n", command)
		return 2
	}
	var o options
	fs := newFlags(&o, stderr)
	if err := fs.Parse(argv[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cnidriver: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if err := o.check(command); err != nil {
		fmt.Fprintf(stderr, "cnidriver %s: %v\n", command, err)
		return 2
	}
	if err := call(command, &o, stdout); err != nil {
		fmt.Fprintf(stderr, "cnidriver %s: %v%s\n", command, err, cniCode(err))
		return 1
	}
	return 0
}

func newFlags(o *options, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("cnidriver", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.conflist, "conflist", "", "network configuration list (.conflist) or single configuration (.conf)")
	fs.StringVar(&o.netns, "netns", "", "path of the container's network namespace (CNI_NETNS)")
	fs.StringVar(&o.containerID, "container-id", "", "container ID (CNI_CONTAINERID)")
	fs.StringVar(&o.ifname, "ifname", "eth0", "interface name in the container (CNI_IFNAME)")
	fs.StringVar(&o.binDirs, "bin-dir", "", "comma-separated plugin directories, searched in order (CNI_PATH)")
	fs.StringVar(&o.cacheDir, "cache-dir", "", "libcni's result cache (default "+libcni.CacheDir+")")
	fs.StringVar(&o.capArgs, "cap-args", "", `capability arguments as a JSON object, e.g. {"portMappings":[...]}`)
	fs.StringVar(&o.args, "args", "", "CNI_ARGS as K=V pairs separated by ';'")
	fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "give up (and kill the plugin) after this long, e.g. 90s")
	return fs
}

func (o *options) check(command string) error {
	missing := []string{}
	if o.conflist == "" {
		missing = append(missing, "--conflist")
	}
	if o.containerID == "" {
		missing = append(missing, "--container-id")
	}
	if o.binDirs == "" {
		missing = append(missing, "--bin-dir")
	}
	if o.netns == "" && command != "del" { // DEL may come after the namespace is gone
		missing = append(missing, "--netns")
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	return nil
}

// loadList reads a .conflist, or a single .conf turned into a one-plugin list
// (as libcni-based runtimes accept both).
func loadList(path string) (*libcni.NetworkConfigList, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if _, isList := top["plugins"]; isList {
		return libcni.ConfListFromFile(path)
	}
	single, err := libcni.ConfFromFile(path)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromConf(single)
}

func runtimeConf(o *options) (*libcni.RuntimeConf, error) {
	rt := &libcni.RuntimeConf{ContainerID: o.containerID, NetNS: o.netns, IfName: o.ifname}
	if o.capArgs != "" {
		if err := json.Unmarshal([]byte(o.capArgs), &rt.CapabilityArgs); err != nil {
			return nil, fmt.Errorf("--cap-args: %w", err)
		}
		if rt.CapabilityArgs == nil {
			return nil, errors.New("--cap-args: not a JSON object")
		}
	}
	for _, pair := range strings.Split(o.args, ";") {
		if pair == "" {
			continue
		}
		kv := strings.SplitN(pair, "=", 2)
		if len(kv) != 2 {
			return nil, fmt.Errorf("--args: %q is not K=V", pair)
		}
		rt.Args = append(rt.Args, [2]string{kv[0], kv[1]})
	}
	return rt, nil
}

func call(command string, o *options, stdout io.Writer) error {
	list, err := loadList(o.conflist)
	if err != nil {
		return err
	}
	rt, err := runtimeConf(o)
	if err != nil {
		return err
	}
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(o.binDirs, ","), o.cacheDir, nil)
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	switch command {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		return result.PrintTo(stdout)
	case "check":
		return cni.CheckNetworkList(ctx, list, rt)
	default:
		return cni.DelNetworkList(ctx, list, rt)
	}
}

// cniCode names the plugin's CNI error code when the failure was one.
func cniCode(err error) string {
	var e *types.Error
	if errors.As(err, &e) {
		return fmt.Sprintf(" (CNI error code %d)", e.Code)
	}
	return ""
}
