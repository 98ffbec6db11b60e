// Least-privilege role assignments, one identity at a time.
param storageAccountName string
param storeContainer string
param appPrincipalId string
param poolPrincipalId string
param streamPrincipalId string
param userPrincipalId string = ''
param registryName string
param batchAccountName string
param eventHubNamespace string
param appInsightsName string

// Built-in role definition ids: "Azure built-in roles"
// (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles); the Batch roles also
// in "Role-based access control for Azure Batch service"
// (https://learn.microsoft.com/azure/batch/batch-role-based-access-control).
var role = {
  blobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  blobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  queueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  tableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'
  eventHubsDataReceiver: 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'
  eventHubsDataSender: '2b629674-e913-4c01-ae53-ef4638d8f975'
  // Azure Batch Job Submitter: data actions batchAccounts/jobs/* and jobSchedules/*, and reading
  // pools (actions pools/read, applications/read); no pool writes, no keys, no account changes.
  // (Contributor has no data actions at all: it could not create a job, yet it could list keys.)
  batchJobSubmitter: '48e5e92e-a480-4e71-aa9c-2778f4c13781'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = { name: storageAccountName }
resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}
resource store 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: storeContainer
}
resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = { name: registryName }
resource batchAccount 'Microsoft.Batch/batchAccounts@2024-07-01' existing = { name: batchAccountName }
resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = { name: eventHubNamespace }
resource readingsHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: namespace
  name: 'readings'
}
resource windowsHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: namespace
  name: 'windows'
}
resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = { name: appInsightsName }

// The Function App: its host storage (blobs, Durable queues and tables), the store, Batch jobs,
// the windows hub, telemetry.
resource appBlob 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, role.blobDataOwner)
  scope: storage
  properties: { principalId: appPrincipalId, principalType: 'ServicePrincipal',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.blobDataOwner) }
}
resource appQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, role.queueDataContributor)
  scope: storage
  properties: { principalId: appPrincipalId, principalType: 'ServicePrincipal',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.queueDataContributor) }
}
resource appTable 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, role.tableDataContributor)
  scope: storage
  properties: { principalId: appPrincipalId, principalType: 'ServicePrincipal',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.tableDataContributor) }
}
resource appBatch 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(batchAccount.id, appPrincipalId, role.batchJobSubmitter)
  scope: batchAccount   // jobs and tasks on this account only; the pool comes from batch.bicep
  properties: { principalId: appPrincipalId, principalType: 'ServicePrincipal',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.batchJobSubmitter) }
}
resource appWindows 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(windowsHub.id, appPrincipalId, role.eventHubsDataReceiver)
  scope: windowsHub
  properties: { principalId: appPrincipalId, principalType: 'ServicePrincipal',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.eventHubsDataReceiver) }
}
resource appMetrics 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, appPrincipalId, role.monitoringMetricsPublisher)
  scope: appInsights
  properties: { principalId: appPrincipalId, principalType: 'ServicePrincipal',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.monitoringMetricsPublisher) }
}

// The Batch pool: the store container only, pulling the scoring image, and its tasks' telemetry
// (Application Insights refuses local auth: "Monitoring Metrics Publisher" publishes all
// telemetry, https://learn.microsoft.com/azure/azure-monitor/app/azure-ad-authentication).
resource poolStore 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(store.id, poolPrincipalId, role.blobDataContributor)
  scope: store
  properties: { principalId: poolPrincipalId, principalType: 'ServicePrincipal',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.blobDataContributor) }
}
resource poolPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, poolPrincipalId, role.acrPull)
  scope: registry
  properties: { principalId: poolPrincipalId, principalType: 'ServicePrincipal',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.acrPull) }
}

resource poolMetrics 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, poolPrincipalId, role.monitoringMetricsPublisher)
  scope: appInsights
  properties: { principalId: poolPrincipalId, principalType: 'ServicePrincipal',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.monitoringMetricsPublisher) }
}

// Stream Analytics: read readings, write windows (hub and the store container).
resource streamIn 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(readingsHub.id, streamPrincipalId, role.eventHubsDataReceiver)
  scope: readingsHub
  properties: { principalId: streamPrincipalId, principalType: 'ServicePrincipal',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.eventHubsDataReceiver) }
}
resource streamOut 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(windowsHub.id, streamPrincipalId, role.eventHubsDataSender)
  scope: windowsHub
  properties: { principalId: streamPrincipalId, principalType: 'ServicePrincipal',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.eventHubsDataSender) }
}
resource streamStore 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(store.id, streamPrincipalId, role.blobDataContributor)
  scope: store
  properties: { principalId: streamPrincipalId, principalType: 'ServicePrincipal',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.blobDataContributor) }
}

// The deploying user (optional; azd passes AZURE_PRINCIPAL_ID, main.parameters.json): the store,
// for `fleetscore models import` and `fleetscore report --store az://...`, and sending to the
// readings hub, for `fleetscore replay` (the namespace has local auth disabled: no keys).
resource userStore 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(store.id, userPrincipalId, role.blobDataContributor)
  scope: store
  properties: { principalId: userPrincipalId, principalType: 'User',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.blobDataContributor) }
}
resource userReadings 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(readingsHub.id, userPrincipalId, role.eventHubsDataSender)
  scope: readingsHub
  properties: { principalId: userPrincipalId, principalType: 'User',
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.eventHubsDataSender) }
}
