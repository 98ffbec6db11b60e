// Event Hubs: "readings" (devices and `fleetscore replay` send here, Stream Analytics reads) and
// "windows" (Stream Analytics writes aggregated windows, record_arrivals reads).
param name string
param location string
param tags object

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: { name: 'Standard', tier: 'Standard', capacity: 1 }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
  }
}

resource readings 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: 'readings'
  properties: { partitionCount: 8, messageRetentionInDays: 1 }
}

resource windows 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: 'windows'
  properties: { partitionCount: 4, messageRetentionInDays: 1 }
}

resource streamGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: readings
  name: 'stream-analytics'
}

output name string = namespace.name
