// The peer of the push benchmark (benchmarks/peer.py): go-control-plane's own SnapshotCache and xDS
// server (ADS, SotW and Delta) serving the very resources spillover serves in the same run.
//
//	peer -listen 127.0.0.1:0 -resources FILE -group bench
//
// FILE holds three length-prefixed (uint32, big endian) DiscoveryResponse messages written by
// benchmarks/peer.py: the clusters, their ClusterLoadAssignments, and the ClusterLoadAssignment of every
// push, each as an Any. The peer prints "ready <port>" once it serves; each "change <i>" line on stdin
// replaces one ClusterLoadAssignment (push i, matched by cluster name) in a new snapshot and answers
// "changed <endpoint version>" after SetSnapshot returned; "stats" answers "stats <cpu seconds> <VmRSS
// bytes> <VmHWM bytes>": getrusage(RUSAGE_SELF), all threads, and /proc/self/status, the way the Python
// servers of the benchmark report themselves. EOF on stdin stops it.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	server "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// groupHash puts every simulated Envoy of one group on one snapshot, the way spillover keys its cache by
// node.cluster.
type groupHash struct{}

func (groupHash) ID(node *core.Node) string { return node.GetCluster() }

// quietLogger keeps go-control-plane's per-response debug logging off the measured path.
type quietLogger struct{}

func (quietLogger) Debugf(string, ...interface{}) {}
func (quietLogger) Infof(string, ...interface{})  {}
func (quietLogger) Warnf(format string, args ...interface{}) {
	log.Printf("warn: "+format, args...)
}
func (quietLogger) Errorf(format string, args ...interface{}) {
	log.Printf("error: "+format, args...)
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		log.Fatal(err)
	}
	seconds := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return seconds(usage.Utime) + seconds(usage.Stime)
}

// status is one "kB" field of /proc/self/status, in bytes.
func status(key string) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		log.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok || name != key {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) == 0 {
			break
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			log.Fatal(err)
		}
		return kb * 1024
	}
	log.Fatalf("no %s in /proc/self/status", key)
	return 0
}

const maxMessage = 256 << 20

func readMessage(r io.Reader) (*discovery.DiscoveryResponse, error) {
	var size uint32
	if err := binary.Read(r, binary.BigEndian, &size); err != nil {
		return nil, err
	}
	if size > maxMessage {
		return nil, fmt.Errorf("message of %d bytes exceeds %d", size, maxMessage)
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	msg := &discovery.DiscoveryResponse{}
	return msg, proto.Unmarshal(buf, msg)
}

func unpack(msg *discovery.DiscoveryResponse) ([]types.Resource, error) {
	out := make([]types.Resource, 0, len(msg.GetResources()))
	for _, a := range msg.GetResources() {
		m, err := a.UnmarshalNew()
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func load(path string) (clusters, endpoints, pushes []types.Resource, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, nil, err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var parts [3][]types.Resource
	for i := range parts {
		msg, err := readMessage(r)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%s: part %d: %w", path, i, err)
		}
		if parts[i], err = unpack(msg); err != nil {
			return nil, nil, nil, fmt.Errorf("%s: part %d: %w", path, i, err)
		}
	}
	return parts[0], parts[1], parts[2], nil
}

// snapshot builds one snapshot with a version per type: the clusters keep theirs, so a push of
// endpoints re-sends no clusters (SotW compares versions per type).
func snapshot(clusterVersion string, clusters []types.Resource, endpointVersion string, endpoints []types.Resource) *cache.Snapshot {
	snap := &cache.Snapshot{}
	snap.Resources[types.Cluster] = cache.NewResources(clusterVersion, clusters)
	snap.Resources[types.Endpoint] = cache.NewResources(endpointVersion, endpoints)
	return snap
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "gRPC address")
	resources := flag.String("resources", "", "the resources file written by benchmarks/peer.py")
	group := flag.String("group", "bench", "node.cluster of the simulated Envoys")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)

	clusters, endpoints, pushes, err := load(*resources)
	if err != nil {
		log.Fatal(err)
	}
	index := make(map[string]int, len(endpoints))
	for i, r := range endpoints {
		index[r.(*endpoint.ClusterLoadAssignment).GetClusterName()] = i
	}

	ctx := context.Background()
	snapshots := cache.NewSnapshotCache(true, groupHash{}, quietLogger{})
	if err := snapshots.SetSnapshot(ctx, *group, snapshot("c0", clusters, "e0", endpoints)); err != nil {
		log.Fatal(err)
	}
	xds := server.NewServer(ctx, snapshots, nil)
	// go-control-plane's own example raises the stream limit the same way: one ADS stream per Envoy.
	grpcServer := grpc.NewServer(grpc.MaxConcurrentStreams(1_000_000), grpc.MaxRecvMsgSize(maxMessage))
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, xds)
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := grpcServer.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.Fatal(err)
		}
	}()
	fmt.Printf("ready %d\n", lis.Addr().(*net.TCPAddr).Port)

	current := append([]types.Resource(nil), endpoints...)
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		if len(fields) == 1 && fields[0] == "stats" {
			fmt.Printf("stats %.6f %d %d\n", cpuSeconds(), status("VmRSS"), status("VmHWM"))
			continue
		}
		if len(fields) != 2 || fields[0] != "change" {
			log.Fatalf("unknown command %q (want: change <i> | stats)", lines.Text())
		}
		i, err := strconv.Atoi(fields[1])
		if err != nil || i < 0 || i >= len(pushes) {
			log.Fatalf("change %q: want 0..%d", fields[1], len(pushes)-1)
		}
		cla := pushes[i].(*endpoint.ClusterLoadAssignment)
		slot, ok := index[cla.GetClusterName()]
		if !ok {
			log.Fatalf("change %d: no cluster %q in the snapshot", i, cla.GetClusterName())
		}
		// A new slice per snapshot: the previous snapshot's resources stay as they were.
		next := append([]types.Resource(nil), current...)
		next[slot] = cla
		current = next
		version := "e" + strconv.Itoa(i+1)
		if err := snapshots.SetSnapshot(ctx, *group, snapshot("c0", clusters, version, current)); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("changed %s\n", version)
	}
	grpcServer.Stop()
}
