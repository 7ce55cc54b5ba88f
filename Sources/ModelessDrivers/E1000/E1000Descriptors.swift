import ModelessDevice

/// A ring of 16-byte legacy descriptors in DMA memory, and the views of one descriptor that
/// the receive and transmit paths read and write by field name.
///
/// Descriptor memory is the driver's own (the device only reads and writes it by DMA), so an
/// access can fail only if the memory was freed under a running driver (the device closed
/// before ``E1000Driver/stop()``). Such an access reads as zero (a descriptor not done) and
/// is reported through `fault` once, so the datapath never throws and never hides it.
struct DescriptorRing {
    /// Bytes per legacy descriptor, receive and transmit alike.
    static let descriptorSize = 16
    let memory: DMABuffer
    let count: Int
    let fault: DeviceFault
    /// The memory and fault unretained, for the descriptor views (this ring keeps them).
    private let access: DescriptorAccess

    init(memory: DMABuffer, count: Int, fault: DeviceFault) {
        precondition(memory.size >= count * Self.descriptorSize, "a ring of \(count) descriptors needs \(count * 16) bytes")
        self.memory = memory
        self.count = count
        self.fault = fault
        access = DescriptorAccess(memory: .passUnretained(memory), fault: .passUnretained(fault))
    }

    /// The ring's length in bytes, for RDLEN and TDLEN.
    var byteCount: UInt32 { UInt32(count * Self.descriptorSize) }

    /// Receive descriptor `slot`.
    @inline(__always)
    func receive(_ slot: Int) -> ReceiveDescriptor { ReceiveDescriptor(ring: access, offset: slot &* Self.descriptorSize) }

    /// Transmit descriptor `slot`.
    @inline(__always)
    func transmit(_ slot: Int) -> TransmitDescriptor { TransmitDescriptor(ring: access, offset: slot &* Self.descriptorSize) }

    /// The slot after `slot`, wrapping to 0.
    @inline(__always)
    func slot(after slot: Int) -> Int { slot &+ 1 == count ? 0 : slot &+ 1 }

    /// The slot before `slot`, wrapping to the last.
    @inline(__always)
    func slot(before slot: Int) -> Int { slot == 0 ? count &- 1 : slot &- 1 }

    /// Zeroes every descriptor.
    func clear() throws(DeviceError) { try memory.fill(0) }
}

/// Typed loads and stores of descriptor fields, through unretained references to the ring's
/// memory and fault: a descriptor view is a plain value, so making and using one takes no
/// reference (the ring, a constant of the driver, keeps both alive while views are used).
struct DescriptorAccess {
    let memory: Unmanaged<DMABuffer>
    let fault: Unmanaged<DeviceFault>

    @inline(__always)
    func load(_ field: DescriptorField<UInt8>, at descriptor: Int) -> UInt8 {
        memory._withUnsafeGuaranteedRef { memory in
            do { return try memory.load8(at: descriptor &+ field.offset) } catch { report(error); return 0 }
        }
    }

    @inline(__always)
    func load(_ field: DescriptorField<UInt16>, at descriptor: Int) -> UInt16 {
        memory._withUnsafeGuaranteedRef { memory in
            do { return try memory.load16(at: descriptor &+ field.offset) } catch { report(error); return 0 }
        }
    }

    @inline(__always)
    func store(_ value: UInt8, to field: DescriptorField<UInt8>, at descriptor: Int) {
        memory._withUnsafeGuaranteedRef { memory in
            do { try memory.store8(value, at: descriptor &+ field.offset) } catch { report(error) }
        }
    }

    @inline(__always)
    func store(_ value: UInt16, to field: DescriptorField<UInt16>, at descriptor: Int) {
        memory._withUnsafeGuaranteedRef { memory in
            do { try memory.store16(value, at: descriptor &+ field.offset) } catch { report(error) }
        }
    }

    @inline(__always)
    func store(_ value: UInt64, to field: DescriptorField<UInt64>, at descriptor: Int) {
        memory._withUnsafeGuaranteedRef { memory in
            do { try memory.store64(value, at: descriptor &+ field.offset) } catch { report(error) }
        }
    }

    /// A failed access (the memory freed under a running driver), reported once.
    private func report(_ error: any Error) {
        fault._withUnsafeGuaranteedRef { $0.report(error) }
    }
}

/// A field of a descriptor: its byte offset and, through `Value`, its width (little-endian,
/// as the device reads and writes it).
struct DescriptorField<Value: FixedWidthInteger> {
    let offset: Int
    init(_ offset: Int) { self.offset = offset }
}

/// A legacy receive descriptor (82540EM manual 3.2.3): the driver sets the buffer address;
/// the NIC writes the rest when it has filled the buffer.
struct ReceiveDescriptor {
    enum Field {
        static let bufferAddress = DescriptorField<UInt64>(0)
        static let length = DescriptorField<UInt16>(8)
        static let packetChecksum = DescriptorField<UInt16>(10)
        static let status = DescriptorField<UInt8>(12)
        static let errors = DescriptorField<UInt8>(13)
        static let special = DescriptorField<UInt16>(14)
    }

    /// Status bits.
    struct Status: OptionSet {
        let rawValue: UInt8
        /// DD: descriptor done, the NIC has written it back.
        static let descriptorDone = Status(rawValue: 1 << 0)
        /// EOP: the last descriptor of a frame.
        static let endOfPacket = Status(rawValue: 1 << 1)
    }

    /// Error bits: CE (CRC or alignment), SE (symbol), SEQ (sequence), CXE (carrier
    /// extension), RXE (data error). TCPE and IPE (checksum offload) are not errors of the frame.
    struct Errors: OptionSet {
        let rawValue: UInt8
        static let crc = Errors(rawValue: 1 << 0)
        static let symbol = Errors(rawValue: 1 << 1)
        static let sequence = Errors(rawValue: 1 << 2)
        static let carrierExtension = Errors(rawValue: 1 << 4)
        static let data = Errors(rawValue: 1 << 7)
        /// Errors that make the frame unusable.
        static let frame: Errors = [.crc, .symbol, .sequence, .carrierExtension, .data]
    }

    let ring: DescriptorAccess
    let offset: Int

    var status: Status {
        @inline(__always) get { Status(rawValue: ring.load(Field.status, at: offset)) }
    }
    var errors: Errors {
        @inline(__always) get { Errors(rawValue: ring.load(Field.errors, at: offset)) }
    }
    var length: Int {
        @inline(__always) get { Int(ring.load(Field.length, at: offset)) }
    }

    /// Points the descriptor at an empty buffer and hands it to the NIC (status cleared).
    @inline(__always)
    func reset(buffer: UInt64) {
        ring.store(buffer, to: Field.bufferAddress, at: offset)
        ring.store(0, to: Field.length, at: offset)
        ring.store(0, to: Field.status, at: offset)
        ring.store(0, to: Field.errors, at: offset)
    }

    /// Gives the descriptor back to the NIC, keeping its buffer.
    @inline(__always)
    func recycle() { ring.store(0, to: Field.status, at: offset) }
}

/// A legacy transmit descriptor (82540EM manual 3.3.3): buffer address, length, command;
/// the NIC sets DD in the status when it is done (with RS set in the command).
struct TransmitDescriptor {
    enum Field {
        static let bufferAddress = DescriptorField<UInt64>(0)
        static let length = DescriptorField<UInt16>(8)
        static let checksumOffset = DescriptorField<UInt8>(10)
        static let command = DescriptorField<UInt8>(11)
        static let status = DescriptorField<UInt8>(12)
        static let checksumStart = DescriptorField<UInt8>(13)
        static let special = DescriptorField<UInt16>(14)
        /// Length, CSO, CMD, STA, CSS and special together: the descriptor's second half as
        /// one little-endian 64-bit word, written in one store when a frame is submitted.
        static let secondHalf = DescriptorField<UInt64>(8)
    }

    /// CMD bits.
    struct Command: OptionSet {
        let rawValue: UInt8
        /// EOP: the last descriptor of a frame.
        static let endOfPacket = Command(rawValue: 1 << 0)
        /// IFCS: the NIC appends the Ethernet FCS.
        static let insertFCS = Command(rawValue: 1 << 1)
        /// RS: report status (set DD when done).
        static let reportStatus = Command(rawValue: 1 << 3)
    }

    /// STA bits.
    struct Status: OptionSet {
        let rawValue: UInt8
        /// DD: descriptor done.
        static let descriptorDone = Status(rawValue: 1 << 0)
    }

    let ring: DescriptorAccess
    let offset: Int

    var status: Status {
        @inline(__always) get { Status(rawValue: ring.load(Field.status, at: offset)) }
    }

    /// Points the descriptor at its buffer, with nothing to send yet.
    func reset(buffer: UInt64) {
        ring.store(buffer, to: Field.bufferAddress, at: offset)
        ring.store(0, to: Field.length, at: offset)
        ring.store(0, to: Field.command, at: offset)
        ring.store(0, to: Field.status, at: offset)
    }

    /// The command of a whole frame handed to the NIC: end of packet, insert FCS, and RS when
    /// `reportStatus`.
    static func command(reportStatus: Bool) -> Command {
        reportStatus ? [.endOfPacket, .insertFCS, .reportStatus] : [.endOfPacket, .insertFCS]
    }

    /// The second half (``Field/secondHalf``) of a descriptor handing over one whole frame of
    /// `length` bytes: the length in bits 0–15, zero CSO, the command in bits 24–31, zero STA,
    /// CSS and special, written in one 64-bit store (``E1000TransmitBatch/append(_:)``): with
    /// RS the NIC writes DD back when it is done with the frame, and, since it processes
    /// descriptors in order, with every one before it.
    static func secondHalf(length: Int, reportStatus: Bool) -> UInt64 {
        UInt64(UInt16(truncatingIfNeeded: length)) | UInt64(command(reportStatus: reportStatus).rawValue) << 24
    }
}

extension DMASlots {
    /// The STA of transmit descriptor `slot`, in a ring checked once for a batch.
    @inline(__always)
    func transmitStatus(_ slot: Int) -> TransmitDescriptor.Status {
        TransmitDescriptor.Status(rawValue: load8(slot: slot, at: TransmitDescriptor.Field.status.offset))
    }

    /// The CMD of transmit descriptor `slot`, in a ring checked once for a batch.
    @inline(__always)
    func transmitCommand(_ slot: Int) -> TransmitDescriptor.Command {
        TransmitDescriptor.Command(rawValue: load8(slot: slot, at: TransmitDescriptor.Field.command.offset))
    }
}
