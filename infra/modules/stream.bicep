// The Stream Analytics job: readings -> 1-minute tumbling windows per sensor -> the store's
// windows/ (Parquet) and the "windows" hub (for record_arrivals). Identity-based everywhere.
param name string
param location string
param tags object
param eventHubNamespace string
param storageAccountName string
param storeContainer string

resource job 'Microsoft.StreamAnalytics/streamingjobs@2021-10-01-preview' = {
  name: name
  location: location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    sku: { name: 'StandardV2' }
    compatibilityLevel: '1.2'
    eventsOutOfOrderPolicy: 'Adjust'
    eventsOutOfOrderMaxDelayInSeconds: 300
    eventsLateArrivalMaxDelayInSeconds: 300
    outputErrorPolicy: 'Drop'
    outputStartMode: 'JobStartTime'
    inputs: [
      {
        name: 'readings'
        properties: {
          type: 'Stream'
          serialization: { type: 'Json', properties: { encoding: 'UTF8' } }
          datasource: {
            type: 'Microsoft.EventHub/EventHub'
            properties: {
              serviceBusNamespace: eventHubNamespace
              eventHubName: 'readings'
              consumerGroupName: 'stream-analytics'
              authenticationMode: 'Msi'
            }
          }
        }
      }
    ]
    outputs: [
      {
        name: 'windowsblob'
        properties: {
          serialization: { type: 'Parquet' }
          datasource: {
            type: 'Microsoft.Storage/Blob'
            properties: {
              storageAccounts: [ { accountName: storageAccountName } ]
              container: storeContainer
              pathPattern: 'windows/{WindowHour}'
              authenticationMode: 'Msi'
            }
          }
        }
      }
      {
        name: 'windowshub'
        properties: {
          serialization: { type: 'Json', properties: { encoding: 'UTF8', format: 'LineSeparated' } }
          datasource: {
            type: 'Microsoft.ServiceBus/EventHub'
            properties: {
              serviceBusNamespace: eventHubNamespace
              eventHubName: 'windows'
              partitionKey: 'DeviceId'
              authenticationMode: 'Msi'
            }
          }
        }
      }
    ]
    transformation: {
      name: 'windows'
      properties: {
        streamingUnits: 3
        query: loadTextContent('../../stream_analytics/query.asaql')
      }
    }
  }
}

output name string = job.name
output principalId string = job.identity.principalId
