import ModelessBus
import Testing

/// Builds 256 or 4096 bytes of configuration space with a capability list.
func configSpace(size: Int = 256, capabilities: [(offset: Int, id: UInt8, next: UInt8, body: [UInt8])],
                 interruptPin: UInt8 = 1) -> PCIConfigSpace {
    var bytes = [UInt8](repeating: 0, count: size)
    bytes[0] = 0x34; bytes[1] = 0x12; bytes[2] = 0xe8; bytes[3] = 0x11  // 1234:11e8
    bytes[0x06] = 0x10  // status: capability list present
    bytes[0x08] = 0x10  // revision
    bytes[0x0B] = 0x00; bytes[0x0A] = 0xFF  // class 00ff00
    bytes[0x34] = UInt8(capabilities.first?.offset ?? 0)
    bytes[0x3D] = interruptPin
    for capability in capabilities {
        bytes[capability.offset] = capability.id
        bytes[capability.offset + 1] = capability.next
        for (index, byte) in capability.body.enumerated() { bytes[capability.offset + 2 + index] = byte }
    }
    return PCIConfigSpace(bytes: bytes)
}

@Suite struct PCIConfigSpaceTests {
    @Test func readsHeaderFields() {
        let config = configSpace(capabilities: [])
        #expect(config.vendorID == 0x1234)
        #expect(config.deviceID == 0x11e8)
        #expect(config.classCode == 0x00FF00)
        #expect(config.revision == 0x10)
        #expect(config.interrupts.intxPinName == "INTA")
    }

    @Test func walksTheCapabilityListInOrder() throws {
        let config = configSpace(capabilities: [
            (0x40, 0x01, 0x50, []), (0x50, 0x05, 0x70, [0x86, 0x00]), (0x70, 0x11, 0x00, [0x3F, 0x00, 0x03, 0x20, 0, 0, 0x03, 0x30, 0, 0]),
        ])
        #expect(config.capabilities.map(\.id) == [0x01, 0x05, 0x11])
        #expect(config.capabilities.map(\.name) == ["Power Management", "MSI", "MSI-X"])
        // MSI: Multiple Message Capable = 3 → 8 vectors, 64-bit.
        #expect(config.interrupts.msi?.vectors == 8)
        #expect(config.interrupts.msi?.is64Bit == true)
        // MSI-X: table size 0x3F → 64 vectors, table in BAR3 at 0x2000, PBA in BAR3 at 0x3000.
        let msix = try #require(config.interrupts.msix)
        #expect([msix.vectors, msix.tableBAR, msix.tableOffset, msix.pendingBAR, msix.pendingOffset] == [64, 3, 0x2000, 3, 0x3000])
        #expect(config.interrupts.summary == "INTx (INTA), MSI (8 vectors), MSI-X (64 vectors)")
    }

    @Test func aListThatLoopsIsReadOnce() {
        let config = configSpace(capabilities: [(0x40, 0x01, 0x50, []), (0x50, 0x05, 0x40, [])])
        #expect(config.capabilities.map(\.offset) == [0x40, 0x50])
    }

    @Test func aCapabilityPointingAtItselfIsReadOnce() {
        let config = configSpace(capabilities: [(0x40, 0x10, 0x40, [])])
        #expect(config.capabilities.count == 1)
    }

    @Test func pointersIntoTheHeaderEndTheList() {
        let config = configSpace(capabilities: [(0x40, 0x01, 0x20, [])])
        #expect(config.capabilities.map(\.offset) == [0x40])
    }

    @Test func everyPossibleChainIsBounded() {
        // Fill the whole capability area with pointers to a pseudo-random next offset.
        var bytes = configSpace(capabilities: [(0x40, 0x09, 0x44, [])]).bytes
        var seed: UInt32 = 12345
        for offset in stride(from: 0x40, to: 0x100, by: 4) {
            seed = seed &* 1_103_515_245 &+ 12345
            bytes[offset] = 0x09
            bytes[offset + 1] = UInt8(truncatingIfNeeded: seed >> 16) | 0x40
        }
        let capabilities = PCIConfigSpace(bytes: bytes).capabilities
        #expect(capabilities.count <= 48)
        #expect(Set(capabilities.map(\.offset)).count == capabilities.count)
    }

    @Test func extendedCapabilitiesAreWalkedAndBounded() {
        var bytes = configSpace(size: 4096, capabilities: []).bytes
        func put(_ offset: Int, _ value: UInt32) { for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) } }
        put(0x100, 0x0001 | 1 << 16 | 0x148 << 20)  // AER → 0x148
        put(0x148, 0x0003 | 1 << 16 | 0x100 << 20)  // Serial number → back to 0x100 (a loop)
        let extended = PCIConfigSpace(bytes: bytes).extendedCapabilities
        #expect(extended.map(\.name) == ["Advanced Error Reporting", "Device Serial Number"])
    }

    @Test func sixtyFourBytesHideTheCapabilities() {
        let config = PCIConfigSpace(bytes: Array(configSpace(capabilities: [(0x40, 0x05, 0, [])]).bytes.prefix(64)))
        #expect(!config.hasReadableCapabilityList)
        #expect(config.capabilities.isEmpty)
        #expect(config.vendorID == 0x1234)
    }

    @Test func noCapabilityBitMeansNoList() {
        var bytes = configSpace(capabilities: [(0x40, 0x05, 0, [])]).bytes
        bytes[0x06] = 0
        #expect(PCIConfigSpace(bytes: bytes).capabilities.isEmpty)
    }
}

@Suite struct PCIBarTests {
    @Test func parsesTheSysfsResourceFile() {
        let text = """
            0x00000000fea00000 0x00000000feafffff 0x0000000000040200
            0x0000000000000000 0x0000000000000000 0x0000000000000000
            0x000000000000c000 0x000000000000c03f 0x0000000000040101
            0x0000004000000000 0x0000004000003fff 0x000000000014220c
            0x0000000000000000 0x0000000000000000 0x0000000000000000
            0x0000000000000000 0x0000000000000000 0x0000000000000000
            0x00000000feb80000 0x00000000febbffff 0x0000000000046200
            """
        let bars = PCIBar.parse(resourceFile: text)
        #expect(bars.map(\.index) == [0, 2, 3])
        #expect(bars[0] == PCIBar(index: 0, space: .memory, start: 0xfea00000, size: 1 << 20, is64Bit: false, isPrefetchable: false))
        #expect(bars[1].space == .io && bars[1].size == 64)
        #expect(bars[2].is64Bit && bars[2].isPrefetchable && bars[2].size == 16384)
        #expect(bars[0].summary == "BAR0: 1 MiB, memory, 32-bit, non-prefetchable at 0xfea00000")
    }
}
