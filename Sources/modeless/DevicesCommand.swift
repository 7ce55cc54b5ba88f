import ArgumentParser
import ModelessCommandLine
import ModelessLogical

struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the running containers and the logical devices they provide.",
        discussion: "Containers are the processes serving logical devices (and `kernel`, the kernel emulation's); names are container/device.")

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func run() throws {
        let containers = ContainerRegistry().runningContainers()
        if json {
            try printJSON(containers.map(ContainerJSON.init))
            return
        }
        printLine("CONTAINER        PLACEMENT         PID      DEVICE                    CONSUMERS")
        for container in containers {
            let head = container.name.padding(16) + " " + container.placement.rawValue.padding(17) + " " + String(container.processID).padding(8)
            if container.devices.isEmpty { printLine(head + " -") }
            for device in container.devices {
                printLine(head + " " + "\(container.name)/\(device.name)".padding(25) + " \(device.consumers)")
            }
        }
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}

/// `modeless devices --json`: one object per container.
struct ContainerJSON: Encodable {
    struct Device: Encodable {
        var name: String
        var consumers: Int
    }

    var container: String
    var placement: String
    var pid: Int32
    var devices: [Device]

    init(_ listing: ContainerListing) {
        container = listing.name
        placement = listing.placement.rawValue
        pid = listing.processID
        devices = listing.devices.map { Device(name: "\(listing.name)/\($0.name)", consumers: $0.consumers) }
    }
}
